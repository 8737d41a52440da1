//! The service: everything the API does, over the store, shared by the HTTP handlers
//! and the in-process coordinator so the embedded factory takes the same code path as
//! a remote one.

use crate::ServeConfig;
use crate::error::ApiError;
use crate::metrics::{ClaimResult, FencedWrite, Metrics};
use axum::http::StatusCode;
use gantry_core::event::{self, NewEvent};
use gantry_core::repo::resolve_repo;
use gantry_core::spec::parse_job_file;
use gantry_core::{FactoryId, Job, JobId, JobState, Outcome, ParsedJob, RunId};
use gantry_git::{self as workspace, SourceCheck, SourceField};
use gantry_protocol::{
    Claim, ErrorKind, FactoryStatus, FinishReport, Health, Heartbeat, HeartbeatAck,
    MAX_REPORTED_DIFF_BYTES, RegisterFactory, Renewed, Scope, SubmitFile, SubmitRequest,
    SubmitResponse, TokenInfo, result_ref,
};
use gantry_store::{Binding, Store, StoreError};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often waiters (long-poll claims, event streams) re-query the store even when no
/// change was signalled: things that become true with the passing of time (a
/// `not_before` in the past, a lease reaped by another replica) signal nothing.
pub(crate) const POLL_FALLBACK: Duration = Duration::from_millis(500);

/// Resolves once `shutdown` turns true (or its sender is gone, which means the same).
///
/// The guard `wait_for` returns is dropped here, so callers' futures stay `Send`.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The longest a claim may wait: longer long polls only tie up connections.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_secs(120);

/// Event kind prefixes only the server writes: a worker uploading one could forge a
/// delivery or a lease record, so such uploads are refused.
const SERVER_EVENT_PREFIXES: [&str; 4] = ["job.", "lease.", "delivery.", "queue."];

/// How long a factory may go unheard (no heartbeat, renewal or registration) before it
/// is listed as down: half the lease TTL (30 s with the default 60 s lease). Half, so a
/// silent factory shows down well before its leases expire, which happens on its own
/// (the reaper) whatever its health says.
pub fn factory_down_after(lease_ttl: Duration) -> Duration {
    lease_ttl / 2
}

/// How often a factory should send a heartbeat: a third of [`factory_down_after`]
/// (10 s with the default lease), so two lost heartbeats in a row never mark it down.
pub fn heartbeat_interval(lease_ttl: Duration) -> Duration {
    factory_down_after(lease_ttl) / 3
}

/// Milliseconds of a duration, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The branch a succeeded job is delivered to in its source repository.
pub fn delivery_branch(job: JobId) -> String {
    format!("gantry/{job}")
}

/// One async lock per source repository, so two deliveries never push into the same
/// repository at once.
type DeliveryLocks = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// Most background chores (removals of leftover result refs, one `git` each) that run
/// at once; more wait for a slot.
const MAX_CHORES: usize = 8;

/// The server's background chores: bounded (at most [`MAX_CHORES`] at once), tracked
/// (a finished one is forgotten at the next spawn) and waited for when the server
/// stops, so no `git` of ours outlives it or piles up behind a slow remote.
pub(crate) struct Chores {
    set: Mutex<tokio::task::JoinSet<()>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Default for Chores {
    fn default() -> Self {
        Chores {
            set: Mutex::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CHORES)),
        }
    }
}

impl Chores {
    /// Runs `chore` in the background once a slot is free.
    fn spawn(&self, chore: impl std::future::Future<Output = ()> + Send + 'static) {
        let slots = self.slots.clone();
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            // The semaphore is never closed: a permit always comes.
            let _slot = slots.acquire_owned().await;
            chore.await;
        });
    }

    /// Waits for the chores to end, at most `within`, then abandons the rest (their
    /// work is best effort: a leftover ref is removed again on the next occasion).
    pub(crate) async fn drain(&self, within: Duration) {
        let mut set = std::mem::take(&mut *self.set.lock().unwrap_or_else(|p| p.into_inner()));
        let drained =
            tokio::time::timeout(within, async { while set.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(left = set.len(), "background chores abandoned at shutdown");
            set.abort_all();
        }
    }
}

/// Runs `write`, a fenced store write, to its end in a task of its own and counts a
/// refusal. A handler is dropped when its client hangs up; the store may commit the
/// write (or record its refusal) all the same, and the count, like a delivery after
/// an accepted finish, must not depend on the client staying.
async fn fenced<T: Send + 'static>(
    metrics: &Arc<Metrics>,
    op: FencedWrite,
    write: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let metrics = metrics.clone();
    tokio::spawn(async move { write.await.map_err(|e| metrics.stale_checked(op, e)) })
        .await
        .map_err(|e| StoreError::Backend(format!("the {op:?} write task failed: {e}")))?
}

/// Store, configuration and delivery locks: what every request handler and the
/// in-process coordinator work with.
pub struct Service {
    store: Arc<dyn Store>,
    cfg: ServeConfig,
    /// One async lock per source repository, so two deliveries never push into the same
    /// repository at once.
    delivery_locks: Arc<DeliveryLocks>,
    /// Background chores (see [`Chores`]).
    chores: Arc<Chores>,
    shutdown: watch::Receiver<bool>,
    /// This process's counters (see [`crate::metrics`]).
    metrics: Arc<Metrics>,
    /// Bumped whenever a stop is asked of a running job, so the embedded factory renews
    /// at once and stops the run within milliseconds instead of at its next renewal.
    stops: watch::Sender<u64>,
    /// Why jobs cannot be sandboxed here, when they cannot and the operator did not
    /// opt out: jobs of tokens that are not admin are then refused.
    unsandboxed: Option<String>,
    /// Event streams open per token, capped by `limits.max_streams_per_token`.
    streams: Arc<crate::limits::StreamSlots>,
}

impl Service {
    /// A service over `store`. Waits (claims, event streams) end when `shutdown` turns
    /// true.
    pub fn new(store: Arc<dyn Store>, cfg: ServeConfig, shutdown: watch::Receiver<bool>) -> Self {
        Service {
            store,
            cfg,
            delivery_locks: Arc::default(),
            chores: Arc::default(),
            shutdown,
            metrics: Arc::new(Metrics::new()),
            stops: watch::channel(0).0,
            streams: Arc::default(),
            unsandboxed: None,
        }
    }

    /// Makes the service refuse jobs of tokens that are not admin, saying `reason`:
    /// the embedded factory could only run them without a sandbox.
    pub fn refusing_unsandboxed(mut self, reason: Option<String>) -> Self {
        self.unsandboxed = reason;
        self
    }

    /// The server's background chores.
    pub(crate) fn chores(&self) -> &Chores {
        &self.chores
    }

    /// How many repositories have a delivery lock in the map (held, waited for, or
    /// just released).
    pub fn delivery_locks_held(&self) -> usize {
        self.delivery_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The event streams open per token.
    pub fn streams(&self) -> &Arc<crate::limits::StreamSlots> {
        &self.streams
    }

    /// Tells in-process factories that a stop was asked (see [`Service::stop_signal`]).
    pub fn stop_asked(&self) {
        self.stops.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A signal that changes whenever a stop (cancel, kill, kill-all) was asked: a hint
    /// to renew now, since stops travel in the answer to a renewal.
    pub fn stop_signal(&self) -> watch::Receiver<u64> {
        self.stops.subscribe()
    }

    /// This process's counters, served at `GET /metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &ServeConfig {
        &self.cfg
    }

    /// A receiver that turns true when the server shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Whether the server is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Parses, checks and stores a batch of job files for the token `submitter`, all or
    /// nothing. Idempotency keys are the submitter's own (see
    /// [`gantry_store::Store::submit_as`]).
    pub async fn submit(
        &self,
        req: SubmitRequest,
        submitter: &TokenInfo,
    ) -> Result<SubmitResponse, ApiError> {
        if req.jobs.is_empty() {
            return Err(ApiError::bad_request(
                "field `jobs` is empty: nothing to submit",
            ));
        }
        if let Some(reason) = &self.unsandboxed
            && submitter.scope != Scope::Admin
        {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::SandboxUnavailable,
                format!(
                    "this server cannot sandbox jobs, so it runs only jobs of admin tokens: {reason}"
                ),
            )
            .with_hint(
                "install bubblewrap on the server's machine and restart it, or (if every submitter may read the server's data dir and admin token) start it with --allow-unsandboxed-jobs",
            ));
        }
        let mut parsed = Vec::with_capacity(req.jobs.len());
        let mut checked = SourceChecks::new();
        for (index, file) in req.jobs.iter().enumerate() {
            let job = prepare(file, &mut checked).await?;
            self.cfg.limits.check_job(index, &file.text, &job)?;
            parsed.push(job);
        }
        let jobs = self.store.submit_as(parsed, Some(submitter.id)).await?;
        Ok(SubmitResponse { jobs })
    }

    /// One job with its runs.
    pub async fn job_with_runs(&self, id: JobId) -> Result<Job, ApiError> {
        let mut job = self.store.job(id).await?;
        job.runs = self.store.runs(id).await?;
        job.insights = gantry_core::job::total_insights(&job.runs);
        Ok(job)
    }

    /// The diff of the job's latest run that left one: the diff its factory reported
    /// (kept by the store, so every replica serves it), else, for runs from before
    /// factories reported diffs, the `diff.patch` an embedded factory wrote in this
    /// server's artifacts.
    pub async fn diff(&self, id: JobId) -> Result<String, ApiError> {
        let job = self.job_with_runs(id).await?;
        for run in job.runs.iter().rev() {
            if let Some(text) = self.store.run_diff(run.id).await? {
                return Ok(text);
            }
            let path =
                gantry_factory::artifacts_dir(&self.cfg.data_dir, id, run.id).join("diff.patch");
            match tokio::fs::read_to_string(&path).await {
                Ok(text) => return Ok(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "cannot read {}: {e}",
                        path.display()
                    )));
                }
            }
        }
        Err(ApiError::not_found(format!("job {id} has no diff"))
            .with_hint(match job.state {
                JobState::Blocked | JobState::Queued => {
                    "the job has not run yet; a diff is saved when a run ends".to_string()
                }
                JobState::Running => {
                    "the job is running; a diff is saved when the run ends".to_string()
                }
                _ => "no run of this job saved a diff (it may have failed before its \
                      workspace was ready)"
                    .to_string(),
            })
            .with_details(json!({ "job": id, "state": job.state })))
    }

    /// Registers a factory after checking its name, seats and capabilities.
    pub async fn register(&self, reg: &RegisterFactory) -> Result<FactoryId, ApiError> {
        check_registration(reg)?;
        Ok(self.store.register_factory(reg).await?)
    }

    /// Registers a factory for the token that asks (an admin or a factory token; the
    /// route checks the scope). A factory name belongs to the token that registered it
    /// first: another token registering it is refused (409 `factory_name_taken`,
    /// naming the name and its token) until that token is revoked, so a factory token
    /// cannot take over a factory, and finish its runs, by registering its name. A
    /// factory token acts for the first factory it registers and for no other (403
    /// `forbidden`). The embedded factory's name is the server's own.
    pub async fn register_for_token(
        &self,
        token: &TokenInfo,
        reg: &RegisterFactory,
    ) -> Result<FactoryId, ApiError> {
        check_registration(reg)?;
        if token.scope == Scope::Factory && crate::is_embedded_name(&reg.name) {
            return Err(ApiError::forbidden(format!(
                "factory name {:?} is the server's embedded factory: token {:?} cannot \
                 register as it",
                reg.name, token.name
            ))
            .with_hint("give the remote factory another name (--name)")
            .with_details(json!({ "token": token.name, "asked": reg.name })));
        }
        match self.store.register_factory_for_token(reg, token.id).await? {
            Binding::Bound(id) => Ok(id),
            Binding::TokenTaken {
                token: name,
                factory,
            } => Err(ApiError::forbidden(format!(
                "token {name:?} acts for factory {factory:?}; it cannot register as factory \
                 {:?}",
                reg.name
            ))
            .with_hint(format!(
                "a factory token acts only for the factory it registered first; give {:?} \
                 a token of its own (gantry token create --name {} --scope factory)",
                reg.name, reg.name
            ))
            .with_details(json!({ "token": name, "factory": factory, "asked": reg.name }))),
            Binding::FactoryTaken {
                factory,
                token: holder,
            } => {
                tracing::warn!(
                    token = %token.name, %factory, %holder,
                    "registration refused: the factory name belongs to another token"
                );
                Err(ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorKind::FactoryNameTaken,
                    format!(
                        "factory name {factory:?} belongs to token {holder:?}, which \
                         registered it; token {:?} cannot register as it",
                        token.name
                    ),
                )
                .with_hint(format!(
                    "give this factory another name (--name); if {factory:?} got a new \
                     token, revoke the old one first (gantry token revoke {holder})"
                ))
                .with_details(json!({ "token": token.name, "factory": factory, "holder": holder })))
            }
            Binding::NameReserved { factory } => {
                tracing::warn!(
                    token = %token.name, %factory,
                    "registration refused: the factory name belongs to no token"
                );
                Err(ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorKind::FactoryNameTaken,
                    format!(
                        "factory name {factory:?} was registered by the server itself or \
                         before factory names were bound to tokens; token {:?} cannot \
                         register as it",
                        token.name
                    ),
                )
                .with_hint("give this factory another name (--name)")
                .with_details(json!({ "token": token.name, "factory": factory, "holder": null })))
            }
        }
    }

    /// Records a factory's heartbeat and says when to send the next one. 404 when the
    /// factory is unknown (the store was replaced): the factory registers again.
    pub async fn heartbeat(
        &self,
        factory: FactoryId,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAck, ApiError> {
        if let Some(load) = hb.load_1m
            && !(load.is_finite() && load >= 0.0)
        {
            return Err(ApiError::bad_request(format!(
                "field `load_1m` is {load}: a load average is a finite number, 0 or more"
            ))
            .with_details(json!({ "field": "load_1m" })));
        }
        self.store.heartbeat(factory, hb).await?;
        Ok(HeartbeatAck {
            interval_ms: millis(heartbeat_interval(self.cfg.lease_ttl)),
            down_after_ms: millis(factory_down_after(self.cfg.lease_ttl)),
        })
    }

    /// Every registered factory with its running jobs, last heartbeat and health: down
    /// when unheard for longer than [`factory_down_after`], judged by the store's clock.
    pub async fn factories(&self) -> Result<Vec<FactoryStatus>, ApiError> {
        let down_after = millis(factory_down_after(self.cfg.lease_ttl));
        let list = self.store.factories().await?;
        Ok(list
            .into_iter()
            .map(|f| FactoryStatus {
                id: f.id,
                name: f.name,
                seats: f.seats,
                capabilities: f.capabilities,
                running: f.running,
                last_seen: f.last_seen,
                last_seen_ago_ms: f.last_seen_ago_ms,
                stats: f.stats,
                health: if f.last_seen_ago_ms > down_after {
                    Health::Down
                } else {
                    Health::Up
                },
            })
            .collect())
    }

    /// Claims a job for `factory`, waiting up to `wait` (capped at [`MAX_CLAIM_WAIT`])
    /// for one to become claimable. Wakes on every store change, and re-polls every
    /// [`POLL_FALLBACK`] for changes that signal nothing. `None` when nothing came or the
    /// server is shutting down.
    pub async fn claim(
        &self,
        factory: FactoryId,
        wait: Duration,
    ) -> Result<Option<Claim>, ApiError> {
        let deadline = Instant::now() + wait.min(MAX_CLAIM_WAIT);
        let mut changes = self.store.changes();
        let mut shutdown = self.shutdown.clone();
        loop {
            // Mark the current change as seen before querying, so a change committed
            // while the query runs still wakes the wait below.
            changes.borrow_and_update();
            let started = Instant::now();
            let claimed = self.store.claim(factory, self.cfg.lease_ttl).await;
            let took = started.elapsed();
            self.metrics.claim_observed(ClaimResult::of(&claimed), took);
            if let Some(mut claim) = claimed? {
                // The store does not know the server's push setting: a factory that
                // cannot share the server's cache publishes the result only when it
                // is delivered.
                claim.deliver = self.cfg.push;
                return Ok(Some(claim));
            }
            let now = Instant::now();
            if now >= deadline || *shutdown.borrow() {
                return Ok(None);
            }
            let nap = (deadline - now).min(POLL_FALLBACK);
            tokio::select! {
                changed = changes.changed() => {
                    // A closed channel means the store is going away: fall back to polling.
                    if changed.is_err() {
                        tokio::time::sleep(nap).await;
                    }
                }
                _ = tokio::time::sleep(nap) => {}
                _ = stopped(&mut shutdown) => return Ok(None),
            }
        }
    }

    /// Renews a run's lease (fenced).
    pub async fn renew(&self, run: RunId, epoch: i64) -> Result<Renewed, ApiError> {
        let (store, ttl) = (self.store.clone(), self.cfg.lease_ttl);
        let renew = async move { store.renew(run, epoch, ttl).await };
        Ok(fenced(&self.metrics, FencedWrite::Renew, renew).await?)
    }

    /// Appends events of a run (fenced). Kinds only the server writes are refused.
    pub async fn append_events(
        &self,
        run: RunId,
        epoch: i64,
        events: Vec<NewEvent>,
    ) -> Result<(), ApiError> {
        for (i, ev) in events.iter().enumerate() {
            let well_formed = !ev.kind.is_empty()
                && ev.kind.len() <= 64
                && ev
                    .kind
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !well_formed {
                return Err(ApiError::bad_request(format!(
                    "field `events[{i}].kind` is {:?}: a kind is 1 to 64 characters of \
                     letters, digits, `.`, `_` and `-`",
                    ev.kind
                ))
                .with_details(json!({ "field": format!("events[{i}].kind"), "value": ev.kind })));
            }
            if let Some(prefix) = SERVER_EVENT_PREFIXES
                .iter()
                .find(|p| ev.kind.starts_with(*p))
            {
                return Err(ApiError::bad_request(format!(
                    "field `events[{i}].kind` is {:?}: kinds starting with {prefix:?} are \
                     written by the server only",
                    ev.kind
                ))
                .with_details(json!({ "field": format!("events[{i}].kind"), "value": ev.kind })));
            }
        }
        let store = self.store.clone();
        let append = async move { store.append_events(run, epoch, events).await };
        Ok(fenced(&self.metrics, FencedWrite::Events, append).await?)
    }

    /// Records the end of a run (fenced) and, when it succeeded with a commit and push
    /// is on, delivers the commit to the source repository as `gantry/<job>`: from this
    /// server's cache, or fetched from the result ref the factory published in the
    /// source ([`FinishReport::result_ref`]), which is then removed.
    ///
    /// Delivery happens only after the store accepted the finish under the run's epoch,
    /// so a stale worker can never cause a push. It runs in a task of its own, awaited
    /// here: a factory that hangs up mid-delivery cannot cut it short.
    pub async fn finish(&self, run: RunId, report: FinishReport) -> Result<Job, ApiError> {
        let Some(outcome) = report.outcome else {
            return Err(ApiError::bad_request("field `outcome` is missing")
                .with_details(json!({ "field": "outcome" })));
        };
        check_report(run, &report)?;
        let end = FinishAndDeliver {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            locks: self.delivery_locks.clone(),
            chores: self.chores.clone(),
            data_dir: self.cfg.data_dir.clone(),
            push: self.cfg.push,
        };
        match tokio::spawn(end.run(run, outcome, report)).await {
            Ok(job) => Ok(job?),
            Err(e) => Err(ApiError::internal(format!(
                "the finish of run {run} failed: {e}"
            ))),
        }
    }
}

/// A finish and the delivery it leads to, with everything owned, so that both run to
/// their end in a task of their own whether or not the factory waits for the answer.
struct FinishAndDeliver {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    locks: Arc<DeliveryLocks>,
    chores: Arc<Chores>,
    data_dir: PathBuf,
    push: bool,
}

impl FinishAndDeliver {
    async fn run(
        self,
        run: RunId,
        outcome: Outcome,
        report: FinishReport,
    ) -> Result<Job, ApiError> {
        let commit = report.commit.clone();
        let published = report.result_ref.clone();
        let insights = report.insights.clone();
        let finished = self.store.finish(run, report).await;
        if let (Err(StoreError::StaleLease { job, .. }), Some(_)) = (&finished, &published) {
            // The report's ref was checked to be this run's own (`check_report`).
            leftover_result_ref(
                &self.chores,
                self.store.clone(),
                self.locks.clone(),
                self.data_dir.clone(),
                *job,
                run,
            );
        }
        let job = finished.map_err(|e| self.metrics.stale_checked(FencedWrite::Finish, e))?;
        let (engine, model) = (job.spec.engine.name(), job.spec.model.as_deref());
        self.metrics
            .run_finished(outcome, engine, model, insights.as_ref());
        let delivers =
            outcome == Outcome::Succeeded && job.state == JobState::Succeeded && self.push;
        if delivers && commit.is_none() {
            tracing::info!(job = %job.id, %run, "nothing to deliver: no commit");
        }
        let commit = commit.filter(|_| delivers);
        if commit.is_none() && published.is_none() {
            return Ok(job);
        }
        let delivery = Delivery {
            store: self.store.clone(),
            data_dir: self.data_dir.clone(),
            lock: delivery_lock(&self.locks, &job.spec.repo),
            job: job.id,
            repo: job.spec.repo.clone(),
            run,
            commit,
            published,
        };
        delivery.run().await;
        Ok(job)
    }
}

/// Removes the result ref a refused (stale) finish named, in a task of its own so the
/// 409 answer waits for no git: the ref is a leftover once the run was reaped (its
/// recorded outcome is `lost`), since a reaped run's finish can never be accepted. Any
/// other recorded outcome means a finish of the run was accepted and this one is a
/// repeat: the delivery of the accepted one owns the ref (and keeps it when it fails),
/// so it is left alone; so is the ref of a run still running (a wrong epoch).
fn leftover_result_ref(
    chores: &Chores,
    store: Arc<dyn Store>,
    locks: Arc<DeliveryLocks>,
    data_dir: PathBuf,
    job: JobId,
    run: RunId,
) {
    chores.spawn(async move {
        match store.run(run).await {
            Ok(r) if r.outcome == Some(Outcome::Lost) => {}
            Ok(r) => {
                tracing::debug!(%job, %run, outcome = ?r.outcome,
                    "result ref of a refused finish kept: the run was not reaped");
                return;
            }
            Err(e) => {
                tracing::warn!(%job, %run, error = %e,
                    "cannot read the run of a refused finish; its result ref stays");
                return;
            }
        }
        remove_result_ref(&*store, &locks, &data_dir, job, run).await;
    });
}

/// Removes the result refs the reaped `runs` may have published before their factory
/// died or stopped, each in a task of its own so a slow git server never delays the
/// reaper. A run that published nothing costs one `git ls-remote`.
pub(crate) fn remove_reaped_result_refs(service: &Service, runs: &[RunId]) {
    // A server that does not push asks no factory to publish (`Claim::deliver`).
    if !service.cfg.push {
        return;
    }
    for &run in runs {
        let (store, locks) = (service.store.clone(), service.delivery_locks.clone());
        let data_dir = service.cfg.data_dir.clone();
        service.chores.spawn(async move {
            match store.run(run).await {
                Ok(r) => remove_result_ref(&*store, &locks, &data_dir, r.job_id, run).await,
                Err(e) => tracing::warn!(%run, error = %e,
                    "cannot read a reaped run; its result ref, if any, stays"),
            }
        });
    }
}

/// Removes [`result_ref`] of `run` from the source of `job`, if it is there, under the
/// repository's delivery lock; best effort, a failure is only logged. Several replicas
/// may do it at once: the ref being gone already is no error.
async fn remove_result_ref(
    store: &dyn Store,
    locks: &DeliveryLocks,
    data_dir: &Path,
    job: JobId,
    run: RunId,
) {
    let repo = match store.job(job).await {
        Ok(j) => j.spec.repo,
        Err(e) => {
            tracing::warn!(%job, %run, error = %e,
                "cannot read the job of a leftover result ref; the ref, if any, stays");
            return;
        }
    };
    let published = result_ref(run);
    let lock = delivery_lock(locks, &repo);
    let _held = lock.lock().await;
    match gantry_git::remove_result_ref(data_dir, &repo, &published).await {
        Ok(true) => tracing::info!(%job, %run, %repo, %published, "leftover result ref removed"),
        Ok(false) => tracing::debug!(%job, %run, %repo, %published, "no leftover result ref"),
        Err(e) => tracing::warn!(%job, %run, %repo, %published, error = %e,
            "cannot remove the leftover result ref"),
    }
}

/// The lock of deliveries into `repo`. Locks nobody holds or waits for (the map's
/// own reference is their only one) are dropped on the way, so the map holds only the
/// repositories being delivered to, not every repository ever seen.
fn delivery_lock(locks: &DeliveryLocks, repo: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = locks.lock().unwrap_or_else(|p| p.into_inner());
    locks.retain(|_, lock| Arc::strong_count(lock) > 1);
    locks.entry(repo.to_string()).or_default().clone()
}

/// Refuses a finish report the store must not keep: a diff over
/// [`MAX_REPORTED_DIFF_BYTES`], or a result ref other than the run's own (the server
/// fetches and deletes that ref in the source, so a report must not name another).
fn check_report(run: RunId, report: &FinishReport) -> Result<(), ApiError> {
    if let Some(diff) = &report.diff
        && diff.len() > MAX_REPORTED_DIFF_BYTES
    {
        return Err(ApiError::bad_request(format!(
            "field `diff` is {} bytes: a reported diff is at most {MAX_REPORTED_DIFF_BYTES} \
             bytes ({} MiB)",
            diff.len(),
            MAX_REPORTED_DIFF_BYTES >> 20
        ))
        .with_hint("cut the diff at a line end below the limit and mark the cut")
        .with_details(json!({ "field": "diff", "bytes": diff.len(),
                              "max_bytes": MAX_REPORTED_DIFF_BYTES })));
    }
    if let Some(published) = &report.result_ref {
        let expected = result_ref(run);
        if *published != expected {
            return Err(ApiError::bad_request(format!(
                "field `result_ref` is {published:?}: run {run} publishes its result at \
                 {expected:?} only"
            ))
            .with_details(json!({ "field": "result_ref", "value": published,
                                  "expected": expected })));
        }
    }
    Ok(())
}

/// One delivery, after an accepted finish: everything it needs, owned, so it runs in a
/// task of its own.
struct Delivery {
    store: Arc<dyn Store>,
    data_dir: PathBuf,
    /// The lock of deliveries into `repo`.
    lock: Arc<tokio::sync::Mutex<()>>,
    job: JobId,
    repo: String,
    run: RunId,
    /// The commit to deliver; `None` when nothing is delivered and only the published
    /// result ref is to be removed.
    commit: Option<String>,
    /// Where the factory published the commit in the source.
    published: Option<String>,
}

impl Delivery {
    /// Under the repository's lock: pushes the commit as `gantry/<job>`, removes the
    /// published result ref (best effort: it is only a leftover by then), and records
    /// `delivery.pushed` or `delivery.failed`. A failed delivery keeps the ref, which
    /// holds the only copy of the commit outside the factory; the event names it.
    async fn run(self) {
        let _held = self.lock.lock().await;
        let Some(commit) = &self.commit else {
            self.remove_published().await;
            return;
        };
        let (job, repo) = (self.job, self.repo.as_str());
        let branch = delivery_branch(job);
        let result = gantry_git::deliver_published(
            &self.data_dir,
            repo,
            commit,
            &branch,
            self.published.as_deref(),
        )
        .await;
        let mut data = json!({ "repo": repo, "branch": branch, "commit": commit });
        if let Some(published) = &self.published {
            data["result_ref"] = json!(published);
        }
        let kind = match &result {
            Ok(()) => {
                tracing::info!(%job, %repo, %branch, %commit, "delivered");
                self.remove_published().await;
                event::DELIVERY_PUSHED
            }
            Err(e) => {
                tracing::warn!(%job, %repo, %branch, error = %e, "delivery failed");
                data["error"] = json!(e.to_string());
                event::DELIVERY_FAILED
            }
        };
        let event = NewEvent {
            kind: kind.to_string(),
            data,
        };
        if let Err(e) = self
            .store
            .record_event(Some(job), Some(self.run), event)
            .await
        {
            tracing::error!(%job, error = %e, "cannot record the delivery event");
        }
    }

    /// Removes the published result ref from the source, if there is one; a failure
    /// is only logged.
    async fn remove_published(&self) {
        let Some(published) = &self.published else {
            return;
        };
        let (job, repo) = (self.job, self.repo.as_str());
        match gantry_git::remove_published(&self.data_dir, repo, published).await {
            Ok(()) => tracing::debug!(%job, %repo, %published, "result ref removed"),
            Err(e) => {
                tracing::warn!(%job, %repo, %published, error = %e, "cannot remove the result ref")
            }
        }
    }
}

/// Checks a factory registration's name, seats and capabilities.
fn check_registration(reg: &RegisterFactory) -> Result<(), ApiError> {
    if reg.name.trim().is_empty() {
        return Err(ApiError::bad_request(
            "field `name` is empty: a factory needs a name",
        ));
    }
    if reg.seats == 0 {
        return Err(ApiError::bad_request(
            "field `seats` is 0: a factory needs at least one seat",
        ));
    }
    for cap in &reg.capabilities {
        gantry_core::caps::validate(cap).map_err(|e| {
            ApiError::bad_request(format!("field `capabilities`: {e}"))
                .with_details(json!({ "field": "capabilities", "value": cap }))
        })?;
    }
    Ok(())
}

/// How long one git call of a submit-time source check may take before the source is
/// left unchecked (the factory that claims the job finds out then).
const SOURCE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a source was refused at submit, kept per batch (see [`prepare`]).
#[derive(Debug, Clone)]
enum Refusal {
    /// The job file's field is at fault: the message names it and its value.
    Field(SourceField, String),
    /// The server could not check (git did not run).
    Server(String),
}

/// The outcome of each (repo, base) checked in a batch.
type SourceChecks = HashMap<(String, Option<String>), Result<(), Refusal>>;

/// Parses a job file and checks its source where the server can (see
/// [`gantry_git::check_source`]): a refused `repo` or `base` is a 400
/// `invalid_job` naming the file, the field (as written: `cwd` is an alias of `repo`),
/// its line and its value. Each (repo, base) is checked once per batch.
async fn prepare(file: &SubmitFile, checked: &mut SourceChecks) -> Result<ParsedJob, ApiError> {
    let mut parsed =
        parse_job_file(&file.file, &file.text).map_err(|e| ApiError::invalid_job(&e))?;
    let dir = file.dir.as_deref().map(Path::new);
    parsed.spec.repo = resolve_repo(&parsed.spec.repo, dir);
    let key = (parsed.spec.repo.clone(), parsed.spec.base.clone());
    let outcome = match checked.get(&key) {
        Some(outcome) => outcome.clone(),
        None => {
            let outcome = check_source(&parsed.spec).await;
            checked.insert(key, outcome.clone());
            outcome
        }
    };
    match outcome {
        Ok(()) => Ok(parsed),
        Err(Refusal::Server(message)) => Err(ApiError::internal(message)),
        Err(Refusal::Field(field, message)) => {
            let (name, value) = match field {
                SourceField::Repo
                    if !parsed.field_lines.contains_key("repo")
                        && parsed.field_lines.contains_key("cwd") =>
                {
                    ("cwd", Some(parsed.spec.repo.as_str()))
                }
                SourceField::Repo => ("repo", Some(parsed.spec.repo.as_str())),
                SourceField::Base => ("base", parsed.spec.base.as_deref()),
            };
            let spec = parsed.error(name, message);
            Err(ApiError::invalid_job(&spec).with_details(json!({
                "file": spec.file,
                "line": spec.line,
                "field": name,
                "value": value,
            })))
        }
    }
}

/// The submit-time check of a job's source.
async fn check_source(spec: &gantry_core::JobSpec) -> Result<(), Refusal> {
    match workspace::check_source(&spec.repo, spec.base.as_deref(), SOURCE_CHECK_TIMEOUT).await {
        Ok(SourceCheck::Checked) => Ok(()),
        Ok(SourceCheck::NotChecked(why)) => {
            tracing::debug!(repo = %spec.repo, base = ?spec.base, %why, "source not checked at submit");
            Ok(())
        }
        Err(e) => Err(match e.field() {
            Some(field) => Refusal::Field(field, e.to_string()),
            None => Refusal::Server(e.to_string()),
        }),
    }
}
