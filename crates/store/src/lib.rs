//! Gantry's durable state: jobs, runs, leases, events, factories and tokens.
//!
//! Invariants every backend upholds (checked by the conformance suite in
//! `tests/it/conformance.rs`, which runs against each backend):
//! - Every operation is atomic (one transaction, or one savepoint of a group commit that
//!   answers no caller before it commits): a crash leaves the state before or after it.
//! - Every state change goes through [`gantry_core::state::next`].
//! - A claim sets `running`, `attempt+1`, `epoch+1` and `lease_expires_at = now + ttl`
//!   by the store's own clock, and inserts the run row, atomically.
//! - A write naming `(run, epoch)` is applied only while the job is running under that
//!   epoch; otherwise nothing is applied, a `lease.stale_write_rejected` event is
//!   recorded and [`StoreError::StaleLease`] is returned.
//! - At most one running job per lock key, enforced by a unique index, not by counting.

pub mod bench;
mod clock;
mod codec;
mod error;
mod lifecycle;
mod postgres;
mod rules;
mod sqlite;
mod submit;
#[cfg(feature = "testing")]
pub mod testing;
mod vfs;

pub use clock::Clock;
pub use error::StoreError;
pub use postgres::{PgOptions, PgStore};
pub use rules::capability_set;
pub use sqlite::{APPLICATION_ID, MIGRATIONS, SqliteStore};

pub use async_trait::async_trait;
use gantry_core::api::{
    Claim, FinishReport, Heartbeat, RegisterFactory, Renewed, Scope, Status, Submitted, TokenInfo,
};
use gantry_core::event::{Event, NewEvent};
use gantry_core::{FactoryId, Job, JobId, JobState, ParsedJob, Run, RunId};
use std::collections::BTreeMap;
use std::time::Duration;

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// At most this many (newest first); `None` for all.
    pub limit: Option<usize>,
    /// Only jobs older than this one (ids below it): the cursor of the next page.
    pub before: Option<JobId>,
}

/// A registered factory.
#[derive(Debug, Clone, PartialEq)]
pub struct FactoryInfo {
    /// Id.
    pub id: FactoryId,
    /// Name.
    pub name: String,
    /// Seats.
    pub seats: u32,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Last registration, heartbeat or lease renewal, store clock.
    pub last_seen: i64,
    /// How long before the listing `last_seen` was, by the store's clock (never
    /// negative), so whoever judges the factory's health needs no clock of its own.
    pub last_seen_ago_ms: u64,
    /// Jobs running now whose current run is this factory's.
    pub running: u32,
    /// The figures of the last heartbeat (all `None` before the first one).
    pub stats: Heartbeat,
}

/// What registering a factory under a factory token came to (see
/// [`Store::register_factory_for_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Registered; the token is bound to this factory (it was already, or is now).
    Bound(FactoryId),
    /// The token is bound to another factory; nothing was changed.
    TokenTaken {
        /// The token's name.
        token: String,
        /// The name of the factory it is bound to.
        factory: String,
    },
    /// The factory's name belongs to another live token (the one that registered it,
    /// or a factory token bound to it); nothing was changed.
    FactoryTaken {
        /// The factory's name.
        factory: String,
        /// The name of the live token it belongs to.
        token: String,
    },
    /// The factory's name was registered by the server itself (its embedded factory) or
    /// before names were bound to tokens, and only an admin token may take it; nothing
    /// was changed.
    NameReserved {
        /// The factory's name.
        factory: String,
    },
}

/// The durable store. Both backends implement it; the server, the embedded factory and
/// the benchmarks use nothing else.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a batch of parsed job files, all or nothing: resolves deps (job ids, or
    /// idempotency keys of earlier jobs or of jobs in the same batch), refuses unknown
    /// deps and cycles (error naming file, line and the dep), returns the existing job
    /// for an idempotency key seen before. New jobs start `blocked` when they have
    /// unsatisfied deps, else `queued`; a job whose dep already ended badly (deps_mode
    /// succeeded) starts `canceled` with the reason.
    ///
    /// Submits as no token (the server itself, benches, tests): [`Store::submit_as`]
    /// with submitter `None`.
    async fn submit(&self, jobs: Vec<ParsedJob>) -> Result<Vec<Submitted>> {
        self.submit_as(jobs, None).await
    }

    /// Stores a batch as [`Store::submit`] says, for the token `submitter` (its id;
    /// `None` for no token). Idempotency keys, and deps written as keys, are the
    /// submitter's own: another token's key is not seen (keys of jobs stored before
    /// keys were scoped are seen by every submitter). A key used again with the same
    /// spec returns the existing job; with a different spec the whole batch is refused
    /// with [`StoreError::IdempotencyConflict`].
    async fn submit_as(
        &self,
        jobs: Vec<ParsedJob>,
        submitter: Option<i64>,
    ) -> Result<Vec<Submitted>>;

    /// One job, without its runs.
    async fn job(&self, id: JobId) -> Result<Job>;

    /// Jobs matching the filter, newest first, each spec without its body (which
    /// [`Store::job`] gives): a list is read often and instructions may be large.
    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>>;

    /// The runs of a job, oldest first.
    async fn runs(&self, job: JobId) -> Result<Vec<Run>>;

    /// One run.
    async fn run(&self, id: RunId) -> Result<Run>;

    /// The diff the run's factory reported when it finished; `None` when it reported
    /// none. `NotFound` for an unknown run.
    async fn run_diff(&self, run: RunId) -> Result<Option<String>>;

    /// Registers a factory (or re-registers one with the same name) and returns its id.
    async fn register_factory(&self, reg: &RegisterFactory) -> Result<FactoryId>;

    /// Registers a factory as [`Store::register_factory`] does for the token `token`
    /// (its id), in one transaction, and binds a factory token to it. A factory name
    /// belongs to the token that registered it first, and a factory token is bound to
    /// the first factory it registers. Registering under another name than the
    /// token's factory, or a name that belongs to another live token, changes nothing
    /// and says which binding is in the way; so does a factory token registering a name
    /// the server registered itself (or one from before names were bound). A name whose
    /// token was revoked is free for the next token. Admin tokens, which may act for any
    /// factory, may register any name but take over only a free one, and are never
    /// bound. The caller checks scopes (only admin and factory tokens register).
    async fn register_factory_for_token(
        &self,
        reg: &RegisterFactory,
        token: i64,
    ) -> Result<Binding>;

    /// Records a factory's heartbeat: `last_seen` becomes now (store clock) and the
    /// figures are kept for [`Store::factories`]. `NotFound` for an unknown factory.
    async fn heartbeat(&self, factory: FactoryId, hb: &Heartbeat) -> Result<()>;

    /// Registered factories, by id, with the count of jobs each is running now.
    async fn factories(&self) -> Result<Vec<FactoryInfo>>;

    /// Claims the best claimable job for the factory (priority desc, then id asc; deps
    /// met; not_before passed; lock free; capabilities satisfied; queue not paused).
    /// `None` when nothing is claimable now; never waits.
    async fn claim(&self, factory: FactoryId, ttl: Duration) -> Result<Option<Claim>>;

    /// Extends the lease of a run (fenced). Returns the new expiry and any stop request.
    async fn renew(&self, run: RunId, epoch: i64, ttl: Duration) -> Result<Renewed>;

    /// Appends events of a run (fenced).
    async fn append_events(&self, run: RunId, epoch: i64, events: Vec<NewEvent>) -> Result<()>;

    /// Records the end of a run (fenced) and moves the job on: success, retry with
    /// backoff, failure, cancel or kill; cascades to dependents. Returns the job after.
    async fn finish(&self, run: RunId, report: FinishReport) -> Result<Job>;

    /// Records the end of a run as [`Store::finish`] does, then claims the next job for
    /// `factory` as [`Store::claim`] does: the loop of a worker that is done with one
    /// job and wants the next. Returns the state the finished job reached (the rest of
    /// it is not read back: the loop needs nothing else) and the claim. A backend may do
    /// both in one transaction (PostgreSQL does, in one statement shared with other
    /// workers' calls, when the finish needs nothing from the job's row: a success of a
    /// job no other job depends on). An error may come after the finish was recorded (an
    /// unknown factory, a connection lost while committing); finishing again is then
    /// refused as stale.
    async fn finish_and_claim(
        &self,
        run: RunId,
        report: FinishReport,
        factory: FactoryId,
        ttl: Duration,
    ) -> Result<(JobState, Option<Claim>)> {
        let job = self.finish(run, report).await?;
        let claim = self.claim(factory, ttl).await?;
        Ok((job.state, claim))
    }

    /// Returns every job whose lease expired to the lifecycle as outcome `lost`
    /// (retry or fail, or canceled/killed when a stop was requested). Idempotent and
    /// safe to run concurrently. Returns the runs it reaped.
    async fn reap(&self) -> Result<Vec<RunId>>;

    /// Makes every lease held by `factory` expire now, so the next reap returns its jobs
    /// to the queue. Called when a factory restarts and knows its old runs are dead.
    async fn expire_leases_of(&self, factory: FactoryId) -> Result<Vec<RunId>>;

    /// Cancels a job: at once when not running, else by asking its factory.
    async fn cancel(&self, id: JobId) -> Result<Job>;

    /// Kills a job: at once when not running, else by asking its factory.
    async fn kill(&self, id: JobId) -> Result<Job>;

    /// Pauses claiming and asks every running job's factory to kill it. Returns the
    /// jobs asked.
    async fn kill_all(&self) -> Result<Vec<JobId>>;

    /// Sends a finished job (failed, canceled, killed) back to the queue with one more
    /// attempt.
    async fn retry(&self, id: JobId) -> Result<Job>;

    /// Pauses or resumes claiming.
    async fn set_paused(&self, paused: bool) -> Result<()>;

    /// Queue-wide status.
    async fn status(&self) -> Result<Status>;

    /// Queued jobs counted by required capability set, keyed by [`capability_set`]
    /// (sorted, deduplicated, comma-joined; `""` for none). Counted by the database in
    /// one aggregate query, so no job is loaded; a set with no queued job is absent.
    async fn queue_depth(&self) -> Result<BTreeMap<String, u64>>;

    /// Records a server-side event.
    async fn record_event(
        &self,
        job: Option<JobId>,
        run: Option<RunId>,
        event: NewEvent,
    ) -> Result<Event>;

    /// Events with id greater than `after`, oldest first, optionally of one job.
    async fn events(&self, after: i64, job: Option<JobId>, limit: usize) -> Result<Vec<Event>>;

    /// Stores a token by the hash of its secret.
    async fn create_token(&self, name: &str, scope: Scope, hash: &str) -> Result<TokenInfo>;

    /// The live (not revoked) token with this hash.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>>;

    /// Every token, revoked ones included.
    async fn tokens(&self) -> Result<Vec<TokenInfo>>;

    /// Revokes a token by name.
    async fn revoke_token(&self, name: &str) -> Result<TokenInfo>;

    /// A counter bumped after every committed change that may make a job claimable or
    /// add events; waiters (long-poll claims, SSE streams) wake on it and re-query.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}
