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
//! The driver is tokio-postgres; TLS is what the URL's `sslmode` and `sslrootcert` ask,
//! with libpq's meaning (see [`tls`]), on rustls. Connections come from a bounded
//! deadpool pool; one more connection LISTENs, and each batch lane has one.

#[macro_use]
mod tx;
mod batch;
mod finish;
mod ops;
mod rows;
mod schema;
mod signal;
pub(crate) mod tls;

use crate::codec::*;
use crate::lifecycle::{self as life, EventRef, Live, WriteTx, settle_dependents};
use crate::rules::{self};
use crate::submit::SubmitTx;
use crate::{Binding, FactoryInfo, JobFilter, Result, Store, StoreError};
use async_trait::async_trait;
use deadpool_postgres::Pool;
use finish::*;
use gantry_core::api::{
    Claim, FinishReport, Heartbeat, RegisterFactory, Renewed, Scope, Status, Submitted, TokenInfo,
};
use gantry_core::event::{Event, NewEvent};
use gantry_core::state::{self, Input};
use gantry_core::time::Millis;
use gantry_core::{FactoryId, Job, JobId, JobState, ParsedJob, RunId, StopKind};
use ops::*;
use rows::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tx::*;

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

impl PgStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/db`),
    /// migrates its schema (several servers may do this at once), and starts the
    /// change listener, notifier and poller. Must be called inside a tokio runtime.
    pub async fn connect(url: &str, opts: PgOptions) -> Result<PgStore> {
        let (url, tls_settings) = tls::split_url(url)?;
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
        let tls = tls::connector(&tls_settings)?;
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
        let pool = build_pool(
            pool_config,
            tls.clone(),
            opts.max_connections.max(1),
            &shown,
        )?;
        let lane_pool = build_pool(lane_config, tls.clone(), batch::LANES, &shown)?;
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
                tls,
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
        Ok(tx.load_job(id).await?)
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
        if rows.is_empty() && !tx.job_exists(job).await? {
            return Err(not_found("job", job));
        }
        rows.iter().map(|r| RawRun::read(r)?.into_run()).collect()
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
        RawRun::read(&row)?.into_run()
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
        let rows = tx.query(&factories_sql("gantry_now_ms()"), &[]).await?;
        rows.iter()
            .map(|r| FactoryRow::read(r)?.into_info())
            .collect()
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
            let kinds = kinds.iter().map(String::as_str);
            let events: Vec<(&str, &str)> = kinds.zip(datas.iter().map(String::as_str)).collect();
            life::apply_run_events(tx, live, &events).await?;
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
        let reaped = in_tx!(self, |tx| life::reap(&tx).await)?;
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
                         (SELECT current_run FROM jobs WHERE state IN ('running', 'checking'))
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
        let job = in_tx!(self, |tx| life::stop(&tx, id, StopKind::Cancel).await)?;
        self.changed();
        Ok(job)
    }

    async fn kill(&self, id: JobId) -> Result<Job> {
        let job = in_tx!(self, |tx| life::stop(&tx, id, StopKind::Kill).await)?;
        self.changed();
        Ok(job)
    }

    async fn kill_all(&self) -> Result<Vec<JobId>> {
        let running = in_tx!(self, |tx| life::kill_all(&tx).await)?;
        self.changed();
        Ok(running)
    }

    async fn retry(&self, id: JobId) -> Result<Job> {
        let job = in_tx!(self, |tx| life::retry(&tx, id).await)?;
        self.changed();
        Ok(job)
    }

    async fn set_paused(&self, paused: bool) -> Result<()> {
        if in_tx!(self, |tx| life::set_paused(&tx, paused).await)? {
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
        let e = EventRef {
            job,
            run,
            kind: &event.kind,
            data: &data,
        };
        let (id, seq, at) = in_tx!(self, |tx| {
            let (id, seq) = life::record_event(&tx, e).await?;
            Ok((id, seq, tx.now))
        })?;
        self.changed();
        Ok(recorded_event(job, run, (id, seq, at, event)))
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
        rows.iter()
            .map(|r| RawEvent::read(r)?.into_event())
            .collect()
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
            Ok(TokenRow::read(&row)?.into_token()?)
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
        row.map(|r| TokenRow::read(&r)?.into_token()).transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let tx = self.conn().await?;
        let rows = tx
            .query(&format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY id"), &[])
            .await?;
        rows.iter()
            .map(|r| TokenRow::read(r)?.into_token())
            .collect()
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
            Ok(TokenRow::read(&row)?.into_token()?)
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}
